//! The generated "synthetic world" corpus (being written).
