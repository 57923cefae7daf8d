"""The evaluator: load a base model once, swap trained rows in (or load a connector), compute exact
eval losses, log them to MLflow. Import the modules themselves (nothing is re-exported here, so
`import evaluator` pulls in no torch):

    base_model   resolve a base-model id to a local directory; load it frozen (ResidentBase)
    rows         prepare the embeddings for a token space; patch / swap rows (ResidentModel)
    batching     eval examples -> length-bucketed, right-padded batches under a token budget
    loss         exact per-example / per-task / overall loss without full logits (LossReport)
    service      one evaluation end to end (Evaluator); worker: the job loop; tracking: MLflow
"""
