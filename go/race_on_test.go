//go:build race

package lockbox

// The race detector allows at most 8128 live goroutines; load tests size
// themselves under it.
const raceEnabled = true
