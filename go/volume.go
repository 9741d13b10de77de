package lockbox

import (
	"context"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// VolumeInfo describes a named volume.
type VolumeInfo struct {
	Name        string    `json:"name"`
	Path        string    `json:"path"` // host directory holding its files
	Created     time.Time `json:"-"`
	CreatedUnix int64     `json:"created_unix"`
}

func volumeInfo(w *wire.VolumeInfo) VolumeInfo {
	return VolumeInfo{Name: w.Name, Path: w.Path, CreatedUnix: w.CreatedUnix, Created: time.Unix(w.CreatedUnix, 0)}
}

// CreateVolume makes a named volume that outlives sandboxes; mount it with
// WithNamedVolume. ErrAlreadyExists if the name is taken.
func CreateVolume(ctx context.Context, name string) (*VolumeInfo, error) {
	var w wire.VolumeInfo
	if err := callMethod(ctx, "volume.create", wire.VolumeCreate, &wire.NameParams{Name: name}, &w); err != nil {
		return nil, err
	}
	v := volumeInfo(&w)
	return &v, nil
}

// ListVolumes lists the named volumes.
func ListVolumes(ctx context.Context) ([]VolumeInfo, error) {
	var r wire.VolumeListResult
	if err := callMethod(ctx, "volume.list", wire.VolumeList, nil, &r); err != nil {
		return nil, err
	}
	var out []VolumeInfo
	if r.Volumes != nil {
		out = make([]VolumeInfo, len(r.Volumes))
	}
	for i := range r.Volumes {
		out[i] = volumeInfo(&r.Volumes[i])
	}
	return out, nil
}

// RemoveVolume deletes a volume and its files. A volume mounted by a
// running sandbox is not removed (ErrAlreadyExists names the users).
func RemoveVolume(ctx context.Context, name string) error {
	return callMethod(ctx, "volume.remove", wire.VolumeRemove, &wire.NameParams{Name: name}, nil)
}
