package lockbox

// Version is the Lockbox product version this SDK pins. It must equal the
// workspace version in Cargo.toml (make check-version enforces it).
const Version = "0.1.0"
