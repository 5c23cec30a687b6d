"""``python -m nlbench.cli``: the same console entry point as the ``nlbench`` script."""

from nlbench.cli import main

if __name__ == "__main__":
    main()
