//! Reed-Solomon fragment code (FragAlgo 1).
