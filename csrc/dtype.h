// Element types (and other small enums) the kernels handle, named without torch or CUDA headers
// so that the CPU and CUDA kernel files stay free of both. Half and bfloat16 are passed as their
// 16-bit storage.
#pragma once

namespace fastxai {

enum class Dtype { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// The ball a projected gradient step (pgd_step) projects onto.
enum class PgdNorm { kLinf = 0, kL2 = 1 };

}  // namespace fastxai
