"""Every `tlpipe` command; each module adds one command group and imports heavy libraries lazily."""
