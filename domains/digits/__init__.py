"""digits: scikit-learn's bundled 8x8 handwritten digits, a tiny real labelled image set."""
