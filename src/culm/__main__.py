"""``python -m culm``: the same as the ``culm`` command."""

from culm.cli import main

if __name__ == "__main__":
    main()
