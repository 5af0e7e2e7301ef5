// SPDX-License-Identifier: GPL-2.0-only
/*
 * splitlock_trap: a test fixture for `cargo xtask vm-test` only; never
 * shipped, never loaded outside the QEMU guests vm-test boots.
 *
 * The guests run under TCG, where no split-lock #AC can happen. Each ioctl
 * on /dev/splitlock_trap stands in for the trap and nothing else: it calls
 * the kernel's own split-lock handler with the instruction pointer the
 * caller passes, in the caller's task, as the #AC exception handler
 * (user space) or KVM's #AC exit handler (guest) would. Everything after
 * the call is the kernel's code: split_lock_warn(), the punishment sleep,
 * the semaphore, the re-enable work, the SIGBUS.
 *
 *   SLT_USER_TRAP  (ip): handle_user_split_lock(regs, 0) with regs->ip = ip
 *                        and no AC flag; the function is not exported, so
 *                        its address comes from /proc/kallsyms as the
 *                        `user_handler` parameter and is checked here
 *                        against the kernel's own symbol table.
 *   SLT_GUEST_TRAP (ip): handle_guest_split_lock(ip), exported to modules.
 *
 * Both return the handler's bool (1 handled, 0 not handled).
 */
#include <linux/fs.h>
#include <linux/kallsyms.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/ptrace.h>
#include <linux/string.h>
#include <asm/cpu.h>
#include <asm/processor-flags.h>
#include <asm/segment.h>

#define SLT_USER_TRAP _IO('S', 1)
#define SLT_GUEST_TRAP _IO('S', 2)

/* sprint_symbol() of the function's first byte starts so. */
#define SLT_SYMBOL_START "handle_user_split_lock+0x0/"

static unsigned long user_handler;
module_param(user_handler, ulong, 0444);
MODULE_PARM_DESC(user_handler,
		 "address of handle_user_split_lock from /proc/kallsyms");

/* The kernel's own prototype of the function, from <asm/cpu.h>. */
static typeof(handle_user_split_lock) *user_split_lock;

static long slt_ioctl(struct file *file, unsigned int cmd, unsigned long ip)
{
	struct pt_regs regs;

	switch (cmd) {
	case SLT_USER_TRAP:
		if (!user_split_lock)
			return -ENOSYS;
		memset(&regs, 0, sizeof(regs));
		regs.ip = ip;
		regs.cs = __USER_CS;
		regs.ss = __USER_DS;
		/* IF and the reserved bit; X86_EFLAGS_AC clear. */
		regs.flags = X86_EFLAGS_FIXED | X86_EFLAGS_IF;
		return user_split_lock(&regs, 0) ? 1 : 0;
	case SLT_GUEST_TRAP:
		return handle_guest_split_lock(ip) ? 1 : 0;
	default:
		return -ENOTTY;
	}
}

static const struct file_operations slt_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = slt_ioctl,
};

static struct miscdevice slt_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "splitlock_trap",
	.fops = &slt_fops,
	.mode = 0600,
};

static int __init slt_init(void)
{
	char name[KSYM_SYMBOL_LEN];

	if (user_handler) {
		/* Refuse an address that is not the function's first byte. */
		sprint_symbol(name, user_handler);
		if (!strncmp(name, SLT_SYMBOL_START, strlen(SLT_SYMBOL_START))) {
			user_split_lock = (void *)user_handler;
		} else {
			pr_err("splitlock_trap: user_handler=%lx is %s, not handle_user_split_lock\n",
			       user_handler, name);
			return -EINVAL;
		}
	}
	pr_info("splitlock_trap: test fixture loaded (user handler %s)\n",
		user_split_lock ? "resolved" : "absent");
	return misc_register(&slt_device);
}

static void __exit slt_exit(void)
{
	misc_deregister(&slt_device);
}

module_init(slt_init);
module_exit(slt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vm-test fixture: calls the kernel's split-lock handlers at a given IP");
