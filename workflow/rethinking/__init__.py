"""rethinking: the randomization tests of Zhang et al. (ICLR 2017) as a pipeline.

One module per stage: data (prepare), corrupt, train, aggregate, figures;
config holds the parameters and the grid of runs; cli the commands that the
Snakemake rules and the DVC stages call.
"""

__version__ = "0.1.0"
