# Part of the driver suite, not of asyncpg: scripts/driver-suite.sh copies it
# into asyncpg's tests/ so it runs in all three runs like asyncpg's own tests.
# asyncpg's own replication tests (HotStandbyTestCase) build a primary and a
# standby of their own and never touch the server behind Custody, so this is
# the suite's test that needs replication: a walsender connection
# (`replication=database` in the startup packet) running IDENTIFY_SYSTEM.
# Directly it passes; through Custody (allow_replication off) it must fail
# with the gateway's FATAL refusal, which asyncpg-expected.txt checks.

import asyncpg
from asyncpg import _testbase as tb


class TestReplicationConnection(tb.ClusterTestCase):

    async def test_replication_identify_system(self):
        con = await self.connect(server_settings={'replication': 'database'})
        try:
            # A walsender speaks only the simple query protocol:
            # execute() without arguments sends a Query message.
            await con.execute('IDENTIFY_SYSTEM')
        finally:
            await con.close()

    async def test_physical_replication_identify_system(self):
        con = await self.connect(server_settings={'replication': 'true'})
        try:
            await con.execute('IDENTIFY_SYSTEM')
        finally:
            await con.close()
