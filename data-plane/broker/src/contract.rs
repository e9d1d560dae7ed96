//! Contract test suite (filled by the broker helper).
