// Package install downloads, verifies and lays out an engine release, and
// decides whether an installed library may be loaded (InstalledLibrary,
// the loader's fallback). Trust is fixed per build: the keys and pinned
// manifest embedded from internal/pin, or the development pin the linker
// set in package lockbox (-X lockbox.dev/lockbox.devPin=DIR), which
// package lockbox hands over through Configure.
//
// The public API (EnsureInstalled, IsInstalled, the With* options, the
// Err* sentinels) stays in package lockbox; this package's sentinels are
// the same values.
package install
