//! The plan (being written).
