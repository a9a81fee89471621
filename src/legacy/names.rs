//! Machine-name rules (being written).
