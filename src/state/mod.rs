//! The state engine (being written).
