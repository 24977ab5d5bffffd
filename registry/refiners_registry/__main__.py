"""``python -m refiners_registry adapters ...``: the registry's command groups without the core CLI."""

from refiners_registry.cli import main

if __name__ == "__main__":
    main()
