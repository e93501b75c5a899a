-- The part of a task's usage that preempted attempts consumed (billing rates it from
-- their `ops.task.preempted` events, not with the final one). Tasks recorded before
-- read as zero.
ALTER TABLE ops_tasks ADD COLUMN preempted_wall_secs   REAL    NOT NULL DEFAULT 0;
ALTER TABLE ops_tasks ADD COLUMN preempted_cpu_secs    REAL    NOT NULL DEFAULT 0;
ALTER TABLE ops_tasks ADD COLUMN preempted_peak_memory INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ops_tasks ADD COLUMN preempted_gpu_secs    REAL    NOT NULL DEFAULT 0;
