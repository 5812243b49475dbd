"""``python -m tagvision.cli``: the same command line as ``tagvision`` (tests and benchmarks start servers so)."""

from tagvision.cli import main

if __name__ == "__main__":
    main()
