package s3

import "testing"

func TestPartSizeFromHint(t *testing.T) {
	b := &Backend{opts: Options{PartSize: DefaultPartSize}}
	tests := []struct {
		hint, want int64
	}{
		{0, DefaultPartSize},
		{10 << 30, DefaultPartSize}, // 2×10 GiB fits in 9,000 parts of 8 MiB
		{100 << 30, 23 << 20},       // 200 GiB / 9,000 = 22.8 MiB, rounded up to whole MiB
		{1 << 50, 5 << 30},          // capped at S3's largest part
		{-1, DefaultPartSize},       // nonsense hints change nothing
	}
	for _, tt := range tests {
		got := b.partSize(tt.hint)
		if got != tt.want {
			t.Errorf("partSize(%d) = %d, want %d", tt.hint, got, tt.want)
		}
		if tt.hint > 0 && got < 5<<30 && 2*tt.hint/got >= 9000 {
			t.Errorf("partSize(%d) = %d: twice the hint needs %d parts", tt.hint, got, 2*tt.hint/got)
		}
	}
}
