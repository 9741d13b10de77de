package tests

import (
	"fmt"
	"strings"
)

// fmtSscan parses "FORKED <n> <rest...>".
func fmtSscan(line string, n *int, rest *string) (int, error) {
	line = strings.TrimPrefix(line, "FORKED ")
	k, err := fmt.Sscan(line, n)
	if i := strings.IndexByte(line, ' '); i >= 0 {
		*rest = line[i+1:]
	}
	return k, err
}
