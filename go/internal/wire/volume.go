package wire

// volume.* methods: named volumes that outlive sandboxes.
var (
	VolumeCreate = Method[NameParams, VolumeInfo]{"volume.create"}
	VolumeList   = Method[Empty, VolumeListResult]{"volume.list"}
	VolumeRemove = Method[NameParams, Empty]{"volume.remove"}
)

var volumeMethods = []spec{VolumeCreate, VolumeList, VolumeRemove}

type VolumeInfo struct {
	Name        string `json:"name"`
	Path        string `json:"path"`
	CreatedUnix int64  `json:"created_unix"`
}

type VolumeListResult struct {
	Volumes []VolumeInfo `json:"volumes"`
}
