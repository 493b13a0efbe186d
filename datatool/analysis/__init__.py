"""Inter-rater agreement, consensus labels, metrics and plots."""
