//go:build !race

package lockbox

const raceEnabled = false
