"""Flower's entry points: the ServerApp and ClientApp a SuperLink and SuperNodes load, and
the simulation that runs both on one machine. Like the CLI they read the run config, so
they sit above it; the federation logic they drive (strategy, aggregator, methods) sits
below it, free of any run config."""
