//! # decoding
//!
//! Reward-guided decoding: best-of-n and rejection sampling with a reward model, and token-level
//! steering of a policy's next-token distribution by a reward or value model at generation time.
//!
//! Nothing is implemented here yet.
