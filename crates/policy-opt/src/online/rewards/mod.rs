//! Reward functions for online RL.
