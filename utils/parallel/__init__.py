"""(3) Parallelism and how weights are held: the accelerator set-up, LoRA and 4-bit (QLoRA) wrapping."""
import logging

# bitsandbytes (requirements-qlora.txt) logs at import, and peft imports it whenever it is installed, that an
# optional CPU kernel package is absent; its own CPU path is used instead: nothing a user can act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
