"""Starting and stopping local node processes: what ``raftchat dev``, the bench, the chaos suite
and the tests share. It imports nothing of the server, so each of them can use it without
depending on the others."""
