"""Pure analytics rules: facts, figures, histograms, intake. No I/O, no faust, no pymongo."""
