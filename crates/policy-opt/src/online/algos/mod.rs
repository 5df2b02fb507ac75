//! Advantage estimators, policy losses, KL estimators, value loss and loss aggregation (verl core_algos).
