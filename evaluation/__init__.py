"""Evaluation: task families (one folder each), scorecard, HTML report, tracking and the leaderboard."""
