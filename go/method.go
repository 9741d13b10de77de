package lockbox

import (
	"context"

	"lockbox.dev/lockbox/internal/wire"
)

// callMethod is call with the request and reply typed by m: the params
// and result can only be the method's own (internal/wire). p nil sends no
// params; r nil ignores the result.
func callMethod[P, R any](ctx context.Context, op string, m wire.Method[P, R], p *P, r *R) error {
	var params, result any
	if p != nil {
		params = p
	}
	if r != nil {
		result = r
	}
	return call(ctx, op, m.Name, params, result)
}
