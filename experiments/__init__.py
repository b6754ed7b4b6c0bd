"""pagesim experiments: configs, the command-line interface, sweeps and plots."""
