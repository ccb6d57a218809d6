"""Many training runs as one experiment: grids over config keys × seeds (`megadyt sweep`), and
the paired-norm comparison behind benchmarks/norm_parity.py. Each run is a normal
`megadyt train` in its own run directory, launched as a subprocess."""
