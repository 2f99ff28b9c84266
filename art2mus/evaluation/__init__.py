"""Evaluation: correspondence, retrieval and (later) FAD and ImageBindScore, all over sets with CIs."""
