"""Drop-in faces of fastxai in the shape of other libraries: ``fastxai.compat.torchattacks``."""
