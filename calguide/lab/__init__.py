"""The Gaussian-mixture lab: guidance measured against exact scores, posteriors and targets."""
