-- The part of a task's usage that preempted attempts consumed, PostgreSQL dialect (billing
-- rates it from their `ops.task.preempted` events, not with the final one). Tasks
-- recorded before read as zero.
ALTER TABLE ops_tasks ADD COLUMN IF NOT EXISTS preempted_wall_secs   DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE ops_tasks ADD COLUMN IF NOT EXISTS preempted_cpu_secs    DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE ops_tasks ADD COLUMN IF NOT EXISTS preempted_peak_memory BIGINT           NOT NULL DEFAULT 0;
ALTER TABLE ops_tasks ADD COLUMN IF NOT EXISTS preempted_gpu_secs    DOUBLE PRECISION NOT NULL DEFAULT 0;
