"""Special tokens, defined once for the whole project.

The paper calls the role tokens ``[SEG_ACT]`` and ``[SEG_TAR]``; the reference code calls them
``[SEG]`` and ``[SEG_OBJ]`` (importers map those names onto these).
"""

SEG_ACT = "[SEG_ACT]"
SEG_TAR = "[SEG_TAR]"
ROLE_TOKENS = (SEG_ACT, SEG_TAR)
ROLES = ("actor", "target")

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"

# Tokens the processor inserts itself; text a user types must never turn into one of them.
CONTROL_TOKENS = (PAD, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, SEG_ACT, SEG_TAR)
