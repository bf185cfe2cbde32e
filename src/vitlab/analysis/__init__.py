"""Analysis of trained models: frequency response and feature spectra (``vitlab analyze``)."""
