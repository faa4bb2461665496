"""``python -m relgen``: train a method (see relgen.cli)."""

from relgen.cli import train_main

if __name__ == "__main__":
    train_main()
