// Package pin holds what the SDK trusts, copied from manifests/ by
// `make release` (go:embed cannot reach outside the module):
// data/keys/*.pub (trusted public keys) and data/<version>/manifest.json
// (+.sig), the pinned manifest. `make check-pin` keeps them in sync.
package pin

import "embed"

//go:embed data
var FS embed.FS
