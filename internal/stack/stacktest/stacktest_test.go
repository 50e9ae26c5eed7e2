package stacktest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/internal/stack/stacktest"
)

func TestServers(t *testing.T) {
	ctx := context.Background()

	p := stacktest.Postgres(t)
	require.NoError(t, p.CreateDatabase(ctx, "kohakku-dispatcher"))
	conn, err := pgx.Connect(ctx, p.URL("kohakku-dispatcher"))
	require.NoError(t, err)
	require.NoError(t, conn.Ping(ctx))
	require.NoError(t, conn.Close(ctx))

	r := stacktest.Redis(t)
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer c.Close()
	require.NoError(t, c.Ping(ctx).Err())

	m := stacktest.MinIO(t)
	require.NoError(t, m.MakeBucket(ctx, "kohakku"))
	mc, err := m.Client()
	require.NoError(t, err)
	ok, err := mc.BucketExists(ctx, "kohakku")
	require.NoError(t, err)
	require.True(t, ok)
}

func TestTemporal(t *testing.T) {
	ctx := context.Background()
	tp := stacktest.Temporal(t)
	c, err := tp.Client(ctx)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.CheckHealth(ctx, &client.CheckHealthRequest{})
	require.NoError(t, err)
	require.Equal(t, "default", tp.Namespace())
}
