//! What the profiling examples share.

/// The `i`th command-line argument, or `default` when it is missing or does not parse.
pub(crate) fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}
