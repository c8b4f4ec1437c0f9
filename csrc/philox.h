// Philox 4x32-10 and the Box-Muller mapping to four float32 normals.
//
// Torch-free and shared by the CPU (C++) and CUDA kernels. It computes exactly what
// fastxai/reference/philox.py defines:
//
//   counter = (element_index >> 2, sample_index, batch_index, 0)
//   key     = (seed & 0xffffffff, seed >> 32)
//   r0..r3  = philox4x32_10(counter, key)
//   u1 = ((r0 >> 8) + 1) * 2^-24, u2 = (r1 >> 8) * 2^-24          (pair 0: lanes 0, 1)
//   u3 = ((r2 >> 8) + 1) * 2^-24, u4 = (r3 >> 8) * 2^-24          (pair 1: lanes 2, 3)
//   z[2p] = sqrt(-2 ln u) * cos(a), z[2p + 1] = sqrt(-2 ln u) * sin(a), a = u' * float32(2 pi)
//
// All floating-point work is float32. The logarithm and sine/cosine are evaluated here with
// fixed polynomials (no libm), using only correctly rounded +, -, *, / and sqrt with no FMA
// contraction (csrc/float32.h), so the CPU and CUDA kernels produce bit-identical noise, the loops
// auto-vectorise on the CPU, and the result is within ~1 ulp of the reference's libm.
// Domains used here: log on (0, 1] (u = k * 2^-24, k >= 1), sin/cos on [0, 2 pi].
#pragma once

#include <stdint.h>

#include "float32.h"

namespace fastxai {
namespace philox {

using float32::bits_float;
using float32::fadd;
using float32::float_bits;
using float32::fdiv;
using float32::fmul;
using float32::fsqrt;
using float32::fsub;

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;
constexpr int kRounds = 10;

// ---- Philox 4x32-10 -------------------------------------------------------------------------

FASTXAI_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
#endif
}

// In place: (c0, c1, c2, c3) <- philox4x32_10((c0, c1, c2, c3), (k0, k1)).
FASTXAI_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                              uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kRounds; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c0, hi0, lo0);
    mulhilo(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
}

// ---- uniforms -------------------------------------------------------------------------------

// ((w >> 8) + 1) * 2^-24, in (0, 1]: exact in float32.
FASTXAI_HD float uniform_open_closed(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>((w >> 8) + 1u)) * 5.9604644775390625e-08f;
}

// (w >> 8) * 2^-24, in [0, 1): exact in float32.
FASTXAI_HD float uniform_closed_open(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>(w >> 8)) * 5.9604644775390625e-08f;
}

// ---- float32 math on the domains used here --------------------------------------------------

// Natural logarithm for positive normal x (FreeBSD/musl logf: reduce to [sqrt(2)/2, sqrt(2)),
// log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f); error < 1 ulp).
FASTXAI_HD float log_positive(float x) {
  const float ln2_hi = 6.9313812256e-01f;  // 0x3f317180
  const float ln2_lo = 9.0580006145e-06f;  // 0x3717f7d1
  const float lg1 = 0.66666662693f;        // 0xaaaaaa.0p-24
  const float lg2 = 0.40000972152f;        // 0xccce13.0p-25
  const float lg3 = 0.28498786688f;        // 0x91e9ee.0p-25
  const float lg4 = 0.24279078841f;        // 0xf89e26.0p-26
  uint32_t ix = float_bits(x);
  ix += 0x3f800000u - 0x3f3504f3u;
  const int32_t k = static_cast<int32_t>(ix >> 23) - 0x7f;
  ix = (ix & 0x007fffffu) + 0x3f3504f3u;
  const float f = fsub(bits_float(ix), 1.0f);
  const float s = fdiv(f, fadd(2.0f, f));
  const float z = fmul(s, s);
  const float w = fmul(z, z);
  const float t1 = fmul(w, fadd(lg2, fmul(w, lg4)));
  const float t2 = fmul(z, fadd(lg1, fmul(w, lg3)));
  const float r = fadd(t2, t1);
  const float hfsq = fmul(fmul(0.5f, f), f);
  const float dk = static_cast<float>(k);
  // s * (hfsq + R) + dk * ln2_lo - hfsq + f + dk * ln2_hi, left to right
  float result = fmul(s, fadd(hfsq, r));
  result = fadd(result, fmul(dk, ln2_lo));
  result = fsub(result, hfsq);
  result = fadd(result, f);
  result = fadd(result, fmul(dk, ln2_hi));
  return result;
}

// sin and cos of a in [0, 2 pi] (a few units beyond is fine): Cody-Waite reduction by pi/2 in
// three parts (exact products for the quadrant counts reached here), then the Cephes minimax
// polynomials on [-pi/4, pi/4].
FASTXAI_HD void sincos_small(float a, float& sin_out, float& cos_out) {
  const float two_over_pi = 0.636619772367581343f;
  const float pio2_1 = 1.5703125f;                    // 8 significant bits
  const float pio2_2 = 4.837512969970703125e-4f;      // 13 significant bits
  const float pio2_3 = 7.54978995489188216e-8f;
  const int32_t q = static_cast<int32_t>(fadd(fmul(a, two_over_pi), 0.5f));  // a >= 0: round
  const float qf = static_cast<float>(q);
  float r = fsub(a, fmul(qf, pio2_1));
  r = fsub(r, fmul(qf, pio2_2));
  r = fsub(r, fmul(qf, pio2_3));
  const float z = fmul(r, r);
  // sin(r) = r + r z (s1 + z (s2 + z s3))
  float ps = fadd(fmul(-1.9515295891e-4f, z), 8.3321608736e-3f);
  ps = fsub(fmul(ps, z), 1.6666654611e-1f);
  const float sin_r = fadd(fmul(fmul(ps, z), r), r);
  // cos(r) = 1 - z/2 + z^2 (c1 + z (c2 + z c3))
  float pc = fsub(fmul(2.443315711809948e-5f, z), 1.388731625493765e-3f);
  pc = fadd(fmul(pc, z), 4.166664568298827e-2f);
  const float cos_r = fadd(fsub(fmul(fmul(pc, z), z), fmul(0.5f, z)), 1.0f);
  // quadrant q: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s)
  const bool swap = (q & 1) != 0;
  const float s_sel = swap ? cos_r : sin_r;
  const float c_sel = swap ? sin_r : cos_r;
  const uint32_t sin_sign = (static_cast<uint32_t>(q) & 2u) << 30;
  const uint32_t cos_sign = (static_cast<uint32_t>(q + 1) & 2u) << 30;
  sin_out = bits_float(float_bits(s_sel) ^ sin_sign);
  cos_out = bits_float(float_bits(c_sel) ^ cos_sign);
}

// ---- normals --------------------------------------------------------------------------------

constexpr float kTwoPi = 6.2831854820251465f;  // float32(2 pi)

// One Box-Muller pair from a radius word and an angle word: (r cos a, r sin a).
FASTXAI_HD void box_muller(uint32_t radius_word, uint32_t angle_word, float& z_cos, float& z_sin) {
  const float radius = fsqrt(fmul(-2.0f, log_positive(uniform_open_closed(radius_word))));
  const float angle = fmul(uniform_closed_open(angle_word), kTwoPi);
  float s, c;
  sincos_small(angle, s, c);
  z_cos = fmul(radius, c);
  z_sin = fmul(radius, s);
}

// The key of a 64-bit seed: (seed & 0xffffffff, seed >> 32).
FASTXAI_HD void key_words(uint64_t seed, uint32_t& k0, uint32_t& k1) {
  k0 = static_cast<uint32_t>(seed & 0xffffffffu);
  k1 = static_cast<uint32_t>(seed >> 32);
}

// The four words of counter (group, sample, row, 0) under key (k0, k1), for elements
// 4 * group + 0..3 of that sample and batch row. Their normals are box_muller(w0, w1) (elements
// 0 and 1) and box_muller(w2, w3) (elements 2 and 3).
FASTXAI_HD void draw4(uint32_t group, uint32_t sample, uint32_t row, uint32_t k0, uint32_t k1, uint32_t& w0,
                      uint32_t& w1, uint32_t& w2, uint32_t& w3) {
  w0 = group;
  w1 = sample;
  w2 = row;
  w3 = 0u;
  philox4x32_10(w0, w1, w2, w3, k0, k1);
}

}  // namespace philox
}  // namespace fastxai
