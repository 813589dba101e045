package dispatch

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"
)

// Ids and cursors come from request paths and query strings; PostgreSQL
// text holds neither NUL nor invalid UTF-8 (SQLSTATE 22021). Such an id
// names no row and such a cursor is not one this store issued: each is
// the store's ordinary error, not a failed query.
func TestAdminTextPostgreSQLCannotHold(t *testing.T) {
	a, _ := setupAdmin(t)
	ctx := context.Background()
	mustCreate(t, a, EndpointInput{Events: []string{"auction.*"}})
	on := true
	for _, id := range []string{"\x00", "whk_\x00", "\xff", "whk_\xc3\x28"} {
		for name, call := range map[string]func() error{
			"GetEndpoint": func() error { _, err := a.GetEndpoint(ctx, id); return err },
			"UpdateEndpoint": func() error {
				_, err := a.UpdateEndpoint(ctx, id, EndpointPatch{Active: &on})
				return err
			},
			"DeleteEndpoint": func() error { return a.DeleteEndpoint(ctx, id) },
			"SendTest":       func() error { _, err := a.SendTest(ctx, id); return err },
			"ListDeliveries": func() error { _, _, err := a.ListDeliveries(ctx, id, DeliveryFilter{}); return err },
			"GetDelivery":    func() error { _, _, err := a.GetDelivery(ctx, id); return err },
			"Redeliver":      func() error { _, err := a.Redeliver(ctx, id); return err },
			"Recover":        func() error { _, err := a.Recover(ctx, id, time.Time{}); return err },
			"RotateSecret":   func() error { _, _, err := a.RotateSecret(ctx, id, time.Hour); return err },
		} {
			if err := call(); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s(%q): %v, want ErrNotFound", name, id, err)
			}
		}
	}
	for _, raw := range []string{"1:\xff", "1:whk_\x00"} {
		c := base64.RawURLEncoding.EncodeToString([]byte(raw))
		if _, _, _, err := a.ListEndpoints(ctx, ListOptions{Cursor: c}); !errors.Is(err, ErrInvalidCursor) {
			t.Errorf("ListEndpoints with cursor %q: %v, want ErrInvalidCursor", raw, err)
		}
	}
}
