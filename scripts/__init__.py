"""Developer tools, outside the runtime package: `python -m scripts.readme`, `python -m scripts.noise`, `python -m scripts.pr_report`."""
