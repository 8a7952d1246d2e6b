"""``python -m fmcore ...`` (what torchrun runs) is the ``fmcore`` command."""

from fmcore.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
