//! Request routing (placeholder; being written).
