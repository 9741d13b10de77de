package lockbox

import (
	"context"
	"time"
)

// VolumeInfo describes a named volume.
type VolumeInfo struct {
	Name        string    `json:"name"`
	Path        string    `json:"path"` // host directory holding its files
	Created     time.Time `json:"-"`
	CreatedUnix int64     `json:"created_unix"`
}

// CreateVolume makes a named volume that outlives sandboxes; mount it with
// WithNamedVolume. ErrAlreadyExists if the name is taken.
func CreateVolume(ctx context.Context, name string) (*VolumeInfo, error) {
	var v VolumeInfo
	if err := call(ctx, "volume.create", "volume.create", map[string]string{"name": name}, &v); err != nil {
		return nil, err
	}
	v.Created = time.Unix(v.CreatedUnix, 0)
	return &v, nil
}

// ListVolumes lists the named volumes.
func ListVolumes(ctx context.Context) ([]VolumeInfo, error) {
	var r struct {
		Volumes []VolumeInfo `json:"volumes"`
	}
	if err := call(ctx, "volume.list", "volume.list", nil, &r); err != nil {
		return nil, err
	}
	for i := range r.Volumes {
		r.Volumes[i].Created = time.Unix(r.Volumes[i].CreatedUnix, 0)
	}
	return r.Volumes, nil
}

// RemoveVolume deletes a volume and its files. A volume mounted by a
// running sandbox is not removed (ErrAlreadyExists names the users).
func RemoveVolume(ctx context.Context, name string) error {
	return call(ctx, "volume.remove", "volume.remove", map[string]string{"name": name}, nil)
}
