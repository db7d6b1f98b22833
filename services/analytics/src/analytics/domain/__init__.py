"""Pure analytics rules: facts, figures, histograms. No I/O, no faust, no pymongo."""
